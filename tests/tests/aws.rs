//! moto, the AWS API emulator, answers the real aws-sdk-ec2 client.

use aws_sdk_ec2::types::{Filter, InstanceType, ResourceType, Tag, TagSpecification};
use stackplane_tests::{aws_config, unique};

#[tokio::test]
async fn moto_answers_ec2_describe_instances_from_the_real_sdk() {
    let ec2 = aws_sdk_ec2::Client::new(&aws_config().await);
    let tenant = unique("aws");
    let by_tenant = Filter::builder()
        .name("tag:stackplane.io/tenant")
        .values(&tenant)
        .build();

    let before = ec2
        .describe_instances()
        .filters(by_tenant.clone())
        .send()
        .await
        .expect("DescribeInstances against moto");
    assert!(
        before.reservations().is_empty(),
        "no instance is tagged {tenant} yet"
    );

    let image = stackplane_tests::moto_image(&ec2).await;
    let run = ec2
        .run_instances()
        .image_id(image)
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(
                    Tag::builder()
                        .key("stackplane.io/tenant")
                        .value(&tenant)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("RunInstances");
    let id = run.instances()[0]
        .instance_id()
        .expect("instance id")
        .to_owned();

    let after = ec2
        .describe_instances()
        .filters(by_tenant)
        .send()
        .await
        .expect("DescribeInstances");
    let found: Vec<_> = after
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .collect();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].instance_id(), Some(id.as_str()));
    assert_eq!(found[0].instance_type(), Some(&InstanceType::T3Micro));

    ec2.terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .expect("TerminateInstances");
}
