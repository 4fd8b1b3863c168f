"""Development tooling, not the product: the local MariaDB and RabbitMQ (``stack``), the demo
visit (``demo``), synthetic movies (``synthetic``) and the launcher of local services
(``services``). The ``relion-zo stack``, ``demo`` and ``demo-data`` commands, the tests and the
benchmarks use it; no product module imports it. A facility points its site file at its own
servers and never needs anything here.
"""
