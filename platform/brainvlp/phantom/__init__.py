"""The phantom: a generator of brain MRI studies, lesion masks and reports drawn from the same findings,
for running and testing the platform without data. Not part of the path from an export to the trainer."""
