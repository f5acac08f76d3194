#!/usr/bin/env bash
# Create the two roles and instance profiles cluster.yaml names (once per AWS account), for the
# bucket the cluster uses and its cluster_name:   deploy/iam/create.sh my-bucket [alae-ray]
#   alae-ray-head:   Ray's autoscaler (launch instances tagged ray-cluster-name=CLUSTER; stop, start,
#                    terminate and retag only those; pass the worker role) + S3 as the workers
#   alae-ray-worker: S3 only: read datasets/ and models/, read and write runs/ and tune/
# The prefixes are the ones the README's commands use (s3://BUCKET/datasets/..., .../runs, .../tune);
# other paths are refused by S3 (AccessDenied). Preparing a dataset is done with your own credentials.
set -euo pipefail
bucket="${1:?usage: deploy/iam/create.sh BUCKET [CLUSTER_NAME]}"
cluster="${2:-alae-ray}"
cd "$(dirname "$0")"
for who in head worker; do
  aws iam create-role --role-name "alae-ray-$who" --assume-role-policy-document file://trust-ec2.json
  sed -e "s/YOUR-BUCKET/$bucket/g" -e "s/YOUR-CLUSTER/$cluster/g" "$who-policy.json" > "/tmp/alae-ray-$who-policy.json"
  aws iam put-role-policy --role-name "alae-ray-$who" --policy-name "alae-ray-$who" \
      --policy-document "file:///tmp/alae-ray-$who-policy.json"
  aws iam create-instance-profile --instance-profile-name "alae-ray-$who"
  aws iam add-role-to-instance-profile --instance-profile-name "alae-ray-$who" --role-name "alae-ray-$who"
done
echo "created alae-ray-head and alae-ray-worker (roles and instance profiles) for s3://$bucket, cluster $cluster"
