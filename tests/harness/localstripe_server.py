"""Runs localstripe (PyPI, GPL-3; run as a separate process only) for one test run.

localstripe pickles its whole store to the fixed path /tmp/localstripe.pickle after every write
and loads it at start. That makes every write O(store) (10,000 subscriptions would take hours),
and shares state between runs and between parallel instances. Each instance started here keeps
its store in memory only, so a run starts empty and instances never see each other's objects.

Usage: localstripe_server.py --port PORT [--seed COUNT --seed-price PRICE]

--seed makes COUNT customers with one active subscription each on PRICE before serving, in
process: the sweep benchmark needs 10,000 subscriptions, and creating them over HTTP costs
localstripe a scan of its whole store per invoice (quadratic). They are created with a trial
(no invoice) and then marked active, as Stripe shows a paid subscription.
"""
import argparse
import sys

import localstripe.resources as resources

resources.Store.dump_to_disk = lambda self: None
resources.Store.try_load_from_disk = lambda self: None

from localstripe.server import start  # noqa: E402  (after the patch above)


def seed(count, price):
    # No event loop runs yet, so no webhooks can be scheduled (and none is configured); an
    # Event would export its object, and a customer's export lists the whole store.
    scheduled, event = resources.schedule_webhook, resources.Event
    resources.schedule_webhook = lambda event: None
    resources.Event = lambda *args, **kwargs: None
    product = resources.Product(name="stackplane sweep benchmark")
    resources.Plan(id=price, product=product.id, amount=1900, currency="usd", interval="month")
    for i in range(count):
        customer = resources.Customer(email="sweep%d@example.com" % i)
        sub = resources.Subscription(customer=customer.id, items=[{"plan": price}],
                                     trial_period_days=30)
        sub.status = "active"
    resources.schedule_webhook, resources.Event = scheduled, event
    print("seeded %d subscriptions on %s" % (count, price), file=sys.stderr, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seed-price", default="price_sweep")
    ours, rest = parser.parse_known_args()
    if ours.seed:
        seed(ours.seed, ours.seed_price)
    sys.argv = [sys.argv[0]] + rest + ["--from-scratch"]
    start()
