"""Tiny, random, offline diffusers pipelines of every supported family (diffusers' own test-size configurations,
tokenizers from in-memory vocabularies). The tests check NAG on them and `nag bench` times them; nothing here
downloads anything."""
