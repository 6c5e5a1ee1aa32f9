"""Plays a Stripe customer against localstripe with the official `stripe` Python SDK, for the
billing tests. One command per run; prints one JSON object.

  stripe_driver.py --api-base URL setup PRICE...            products and plans with these ids
  stripe_driver.py --api-base URL customer EMAIL            a customer with a card on file
  stripe_driver.py --api-base URL subscribe CUSTOMER PRICE  a subscription (paid with the card)
  stripe_driver.py --api-base URL change SUBSCRIPTION PRICE moves its one item to PRICE
  stripe_driver.py --api-base URL cancel SUBSCRIPTION       cancels it now
  stripe_driver.py --api-base URL bundle CUSTOMER PRICE[:QTY]...  one subscription, one item each
  stripe_driver.py --api-base URL items SUBSCRIPTION OP...  Subscription.modify(items=...): OP is
      +PRICE[:QTY] (add), ~PRICE (remove its item), =PRICE:QTY (set its item's quantity)
  stripe_driver.py --api-base URL webhook URL SECRET        localstripe signs and sends its events
  stripe_driver.py --api-base URL bulk COUNT PRICE          COUNT customers, one subscription each
"""
import argparse
import json
import sys
import time
import urllib.parse
import urllib.request

import stripe


def setup(prices):
    product = stripe.Product.create(name="stackplane test product")
    for price in prices:
        try:
            stripe.Plan.retrieve(price)
        except stripe.error.InvalidRequestError:
            stripe.Plan.create(id=price, product=product.id, amount=1900, currency="usd",
                               interval="month")
    return {"prices": prices}


def customer(email):
    c = stripe.Customer.create(email=email, name=email.split("@")[0])
    pm = stripe.PaymentMethod.create(type="card", card={
        "number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"})
    stripe.PaymentMethod.attach(pm.id, customer=c.id)
    stripe.Customer.modify(c.id, invoice_settings={"default_payment_method": pm.id})
    return {"customer": c.id}


def subscribe(customer_id, price):
    s = stripe.Subscription.create(customer=customer_id, items=[{"plan": price}])
    return {"subscription": s.id, "status": s.status}


def price_qty(arg):
    price, _, qty = arg.rpartition(":") if ":" in arg else (arg, "", "")
    return price, int(qty) if qty else None


def bundle(customer_id, *prices):
    items = []
    for arg in prices:
        price, qty = price_qty(arg)
        items.append({"plan": price, **({"quantity": qty} if qty else {})})
    s = stripe.Subscription.create(customer=customer_id, items=items)
    return {"subscription": s.id, "status": s.status,
            "items": {i["plan"]["id"]: i["id"] for i in s["items"]["data"]}}


def modify_items(subscription_id, *ops):
    s = stripe.Subscription.retrieve(subscription_id)
    by_price = {i["plan"]["id"]: i["id"] for i in s["items"]["data"]}
    items = []
    for op in ops:
        kind, arg = op[0], op[1:]
        price, qty = price_qty(arg)
        if kind == "+":
            items.append({"plan": price, **({"quantity": qty} if qty else {})})
        elif kind == "~":
            items.append({"id": by_price[price], "deleted": True})
        elif kind == "=":
            items.append({"id": by_price[price], "quantity": qty})
        else:
            sys.exit("unknown item operation %s" % op)
    s = stripe.Subscription.modify(subscription_id, items=items)
    return {"subscription": s.id, "status": s.status,
            "items": {i["plan"]["id"]: {"id": i["id"], "quantity": i["quantity"]}
                      for i in s["items"]["data"]}}


def change(subscription_id, price):
    s = stripe.Subscription.retrieve(subscription_id)
    item = s["items"]["data"][0]["id"]
    s = stripe.Subscription.modify(subscription_id, items=[{"id": item, "plan": price}])
    return {"subscription": s.id, "status": s.status, "price": s["items"]["data"][0]["plan"]["id"]}


def cancel(subscription_id):
    s = stripe.Subscription.delete(subscription_id)
    return {"subscription": s.id, "status": s.status}


def webhook(api_base, url, secret):
    # localstripe's own configuration endpoint (not part of Stripe's API, so not in the SDK).
    data = urllib.parse.urlencode({"url": url, "secret": secret}).encode()
    urllib.request.urlopen(urllib.request.Request(
        api_base + "/_config/webhooks/stackplane", data=data, method="POST"), timeout=10).read()
    return {"webhook": url}


def bulk(count, price):
    # Customers without a card and a free plan: the subscription is active at once and each
    # costs localstripe the fewest objects (no payment intent, no charge).
    product = stripe.Product.create(name="stackplane bulk product")
    free = price
    try:
        stripe.Plan.retrieve(free)
    except stripe.error.InvalidRequestError:
        stripe.Plan.create(id=free, product=product.id, amount=0, currency="usd", interval="month")
    started = time.monotonic()
    for i in range(count):
        c = stripe.Customer.create(email="bulk%d@example.com" % i)
        stripe.Subscription.create(customer=c.id, items=[{"plan": free}])
    return {"created": count, "seconds": round(time.monotonic() - started, 1)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--api-base", required=True)
    p.add_argument("command")
    p.add_argument("args", nargs="*")
    a = p.parse_args()
    stripe.api_key = "sk_test_stackplane"
    stripe.api_base = a.api_base
    stripe.max_network_retries = 0
    commands = {
        "setup": lambda: setup(a.args),
        "customer": lambda: customer(*a.args),
        "subscribe": lambda: subscribe(*a.args),
        "change": lambda: change(*a.args),
        "cancel": lambda: cancel(*a.args),
        "bundle": lambda: bundle(*a.args),
        "items": lambda: modify_items(*a.args),
        "webhook": lambda: webhook(a.api_base, *a.args),
        "bulk": lambda: bulk(int(a.args[0]), a.args[1]),
    }
    if a.command not in commands:
        sys.exit("unknown command %s" % a.command)
    print(json.dumps(commands[a.command]()))


if __name__ == "__main__":
    main()
