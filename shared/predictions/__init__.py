"""The prediction record, its one state table, its store and how a prediction ends."""
