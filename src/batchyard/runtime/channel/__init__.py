"""The job's channel: requests job code makes of the platform (the dispatcher, the
database broker, e-mail), answered with the server's powers."""
