#!/usr/bin/env bash
# Create the two roles and instance profiles cluster.yaml names (once per AWS account), with the
# bucket the cluster uses:   deploy/iam/create.sh my-bucket
#   alae-ray-head:   Ray's autoscaler (launch/terminate EC2 workers, pass the worker role) + S3
#   alae-ray-worker: S3 only
set -euo pipefail
bucket="${1:?usage: deploy/iam/create.sh BUCKET}"
cd "$(dirname "$0")"
for who in head worker; do
  aws iam create-role --role-name "alae-ray-$who" --assume-role-policy-document file://trust-ec2.json
  sed "s/YOUR-BUCKET/$bucket/g" "$who-policy.json" > "/tmp/alae-ray-$who-policy.json"
  aws iam put-role-policy --role-name "alae-ray-$who" --policy-name "alae-ray-$who" \
      --policy-document "file:///tmp/alae-ray-$who-policy.json"
  aws iam create-instance-profile --instance-profile-name "alae-ray-$who"
  aws iam add-role-to-instance-profile --instance-profile-name "alae-ray-$who" --role-name "alae-ray-$who"
done
echo "created alae-ray-head and alae-ray-worker (roles and instance profiles) for s3://$bucket"
