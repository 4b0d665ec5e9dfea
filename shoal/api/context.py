"""What every handler reaches: the node this API serves."""

from aiohttp import web

from manager.manager import Manager
from shoal.node import Node

NODE = web.AppKey("node", Node)


def node_of(request: web.Request) -> Node:
    return request.app[NODE]


def manager_of(request: web.Request) -> Manager:
    """The manager behind this API, or the 503 a user gets on a worker or outside a swarm."""
    return node_of(request).manager()
