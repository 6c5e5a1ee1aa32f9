#!/usr/bin/env python3
"""The demo's look into moto (AWS_ENDPOINT_URL) with boto3 from the moto virtualenv.

  moto_demo.py zone DOMAIN
      Creates a Route53 hosted zone and prints its id (moto chooses ids itself).
  moto_demo.py show ZONE_ID INSTANCE_ID DNS_RECORD
      Prints the EC2 instance and the DNS record a tenant's status names, as moto has them.
      Exits 1, saying what is missing, when either is absent (or passed empty).
"""

from __future__ import annotations

import os
import sys
import uuid

import boto3


def client(service: str):
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        sys.exit("moto_demo.py: AWS_ENDPOINT_URL is not set (source the harness's env.sh)")
    return boto3.client(service, endpoint_url=endpoint, region_name=os.environ.get("AWS_REGION", "us-east-1"))


def zone(domain: str) -> int:
    r53 = client("route53")
    z = r53.create_hosted_zone(Name=domain, CallerReference=f"demo-{uuid.uuid4()}")
    print(z["HostedZone"]["Id"].removeprefix("/hostedzone/"))
    return 0


def image() -> int:
    """An AMI id moto knows (real AWS AMI ids are per account and region; moto ships its own)."""
    images = client("ec2").describe_images()["Images"]
    if not images:
        sys.exit("moto_demo.py: moto lists no images")
    print(sorted(i["ImageId"] for i in images)[0])
    return 0


def show(zone_id: str, instance_id: str, record: str) -> int:
    missing = []
    if instance_id:
        found = client("ec2").describe_instances(InstanceIds=[instance_id])
        instances = [i for r in found["Reservations"] for i in r["Instances"]]
        for i in instances:
            tags = ", ".join(f"{t['Key']}={t['Value']}" for t in i.get("Tags", []))
            print(
                f"EC2 instance {i['InstanceId']}  type {i['InstanceType']}  state {i['State']['Name']}  "
                f"public IP {i.get('PublicIpAddress', '-')}  image {i['ImageId']}\n  tags: {tags}"
            )
        if not instances:
            missing.append(f"the tenant's status names instance {instance_id}, which moto does not have")
    else:
        missing.append("the tenant's status names no instance: the controller's cloud step did not provision one")
    if not zone_id:
        print("the platform has no hosted zone: no DNS record")
    elif record:
        sets = client("route53").list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
        wanted = record.rstrip(".")
        matches = [s for s in sets if s["Name"].rstrip(".") == wanted]
        for s in matches:
            values = ", ".join(r["Value"] for r in s.get("ResourceRecords", []))
            print(f"Route53 record {s['Name']} {s['Type']} -> {values} (zone {zone_id})")
        if not matches:
            missing.append(f"the tenant's status names DNS record {record}, which zone {zone_id} in moto does not have")
    else:
        missing.append("the tenant's status names no DNS record: the controller's cloud step did not create one")
    for m in missing:
        print(f"moto_demo.py: {m}", file=sys.stderr)
    return 1 if missing else 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "zone":
        return zone(sys.argv[2])
    if len(sys.argv) == 2 and sys.argv[1] == "image":
        return image()
    if len(sys.argv) == 5 and sys.argv[1] == "show":
        return show(*sys.argv[2:])
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main())
