"""What routes answer from stored records beyond one record: a tenant's prediction list, a batch's
predictions and results file, and a batch's cancel."""
