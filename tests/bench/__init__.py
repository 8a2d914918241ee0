"""Tests of `outbox bench`."""
