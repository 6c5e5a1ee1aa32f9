"""Runs localstripe (PyPI, GPL-3; run as a separate process only) for one test run.

localstripe pickles its whole store to the fixed path /tmp/localstripe.pickle after every write
and loads it at start. That makes every write O(store) (10,000 subscriptions would take hours),
and shares state between runs and between parallel instances. Each instance started here keeps
its store in memory only, so a run starts empty and instances never see each other's objects.

Usage: localstripe_server.py --port PORT [--seed COUNT --seed-price PRICE]

localstripe implements subscriptions of one item only (more answers 500 "Not implemented"). Stripe
subscriptions have any number: bundles are what the billing tests need. `multi_item_subscriptions`
teaches it, without touching invoicing (the first item is invoiced as before): create with several
`items`, and `Subscription.modify(items=[...])` adding an item (no `id`), changing one (`id` with
`plan`/`quantity`) or removing one (`id` with `deleted: true`), as Stripe's API takes them.

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


def multi_item_subscriptions():
    Subscription, SubscriptionItem = resources.Subscription, resources.SubscriptionItem
    create, update = Subscription.__init__, Subscription._update

    def quantity(item):
        return int(item.get("quantity") or 1)

    def init(self, customer=None, items=None, **kwargs):
        items = list(items or [])
        create(self, customer=customer, items=items[:1] or None, **kwargs)
        for item in items[1:]:
            self.items._list.append(SubscriptionItem(
                subscription=self.id, plan=item["plan"], quantity=quantity(item)))

    def modify(self, items=None, **kwargs):
        one_plain = (items is not None and len(items) == 1 and len(self.items._list) == 1
                     and not resources.try_convert_to_bool(items[0].get("deleted")))
        if items is None or one_plain:
            return update(self, items=items, **kwargs)
        for item in items:
            existing = [si for si in self.items._list if si.id == item.get("id")]
            if item.get("id") and not existing:
                raise resources.UserError(404, "No such subscription item: %s" % item["id"])
            if existing and resources.try_convert_to_bool(item.get("deleted")) is True:
                self.items._list.remove(existing[0])
            elif existing:
                if item.get("plan"):
                    existing[0].plan = resources.Plan._api_retrieve(item["plan"])
                if item.get("quantity") is not None:
                    existing[0].quantity = quantity(item)
            else:
                self.items._list.append(SubscriptionItem(
                    subscription=self.id, plan=item["plan"], quantity=quantity(item)))
        if not self.items._list:
            raise resources.UserError(400, "A subscription needs at least one item")
        return update(self, items=None, **kwargs)

    Subscription.__init__, Subscription._update = init, modify


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
    multi_item_subscriptions()
    if ours.seed:
        seed(ours.seed, ours.seed_price)
    sys.argv = [sys.argv[0]] + rest + ["--from-scratch"]
    start()
