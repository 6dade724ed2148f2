"""Toy-model presets: builders that pretrain the embedded models, and preset name -> model folder."""
