"""OpenAPI documents: the API's own and each model version's."""
