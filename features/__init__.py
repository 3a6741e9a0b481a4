"""The data contract and the feature transformations, shared by training and serving."""
