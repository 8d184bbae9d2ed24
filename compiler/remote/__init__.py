"""How hosts are reached: OpenSSH (``ssh``: a shell, or ``docker system dial-stdio``) and
the Docker Engine API over unix://, ssh:// and tcp://. One layer, used by every driver."""
