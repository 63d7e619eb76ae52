"""Recurrent DNI (paper §3.2): an LSTM trained with truncated BPTT over windows of T steps, with or
without a synthetic gradient for its state at every window boundary, on Copy, Repeat Copy, Penn
Treebank characters, and a two-timescale system of two networks.

core.py     the LSTM, the state synthesizer, one truncated-BPTT/DNI window, the method base class
tasks.py    the sequence tasks (data streams, curriculum, settings) and their registration
train.py    the training loops, one per task, metrics out through ``log(metrics, step)``

Kept free of imports at package level: dnibench.tasks imports rnn.tasks, which imports back.
"""
