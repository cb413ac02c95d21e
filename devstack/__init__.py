"""Local infrastructure, in one place: the servers that the tests, the benchmark and the demo run on,
their databases and virtual hosts, and the system's own processes.

    servers.py    which Postgres and RabbitMQ: containers, private instances from the local binaries,
                  or servers of yours that you name explicitly; chosen once, said at the start
    postgres.py   a Postgres server: started, stopped, restarted, killed, paused; databases made
    rabbitmq.py   a RabbitMQ node: the same, and virtual hosts and permissions (management API)
    docker.py     the few `docker` commands the containers need
    processes.py  one of the system's processes (`python -m gateway`, ...): started, awaited, stopped
    stack.py      the whole system on given servers: databases, a vhost, the three processes
    invariants.py the design's invariants I1 to I4, checked against a stack's databases and broker
    relay.py      a TCP relay in front of a server, to cut or hold its connections (network faults)
    keys.py, ports.py, waiting.py   a signing key pair, a free port, a condition awaited with a deadline

It never touches a server it did not start, unless it is pointed at one explicitly, and then it does
nothing to that server but make and drop databases and virtual hosts of its own.
"""
