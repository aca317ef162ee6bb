"""The state API's errors, under Ray's names (``ray.util.state.exception``)."""


class RayStateApiException(Exception):
    """The state API could not answer: the cluster refused the request (a bad filter,
    an unknown resource) or could not be reached."""


class ServerUnavailable(RayStateApiException):
    """No state API answers at the address."""
