"""The rehearsal: the deployed shape under shopper traffic, catalog edits, retraining and faults.

One module per role, in the order a run uses them:

* ``plan``      what to run: duration, rates, the fault schedule, latency budgets (CLI flags)
* ``dataset``   the data: held-out sequences to replay, the history the store and log start from
* ``stack``     the processes: PostgreSQL, Redis, two API replicas, nginx, the retrain job
* ``nginx``     the LB's configuration, rendered from the project's ``deploy/`` files
* ``ledger``    what the clients saw: every request, every event and catalog write answered
* ``client``    one HTTP call through the LB (or to one replica), timed and recorded
* ``shoppers``, ``admin``, ``hostile``   the three kinds of traffic
* ``faults``    kill -9, Redis restart, PostgreSQL stopped, a corrupt bundle, the retrain job
* ``monitor``   the replicas' /readyz and the log's row count, sampled every second
* ``state``     the system's own state read at the end: the database, Redis, the store
* ``checks``, ``checks_state``   the pass/fail lines
* ``report``    the JSON summary and the HTML report with its plots
* ``run``       the whole run, and the command line (``bench/rehearsal.py``)

Every check reads what the system itself holds (its database, Redis, store, /readyz,
/metrics) and compares it with what the clients were answered; none passes by default.
"""
