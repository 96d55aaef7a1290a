from .importance import *  # noqa  (temporary during development)
