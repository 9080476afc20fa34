"""S3 storage: objects, uploaded files and the boto3 client."""
