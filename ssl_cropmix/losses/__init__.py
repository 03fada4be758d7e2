"""losses."""

from ssl_cropmix.losses.infonce import infonce_queue_loss

__all__ = ["infonce_queue_loss"]
