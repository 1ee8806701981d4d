"""Parity with the official implementations, each run in its own environment.

``python -m evalsuite.parity [--rows a,b] [--full]`` scores the same images and prompts with the official
package (in a cached side venv holding only its pins, see :mod:`.envs`) and with our reward, on the same
weights written in the official checkpoint format (:mod:`.models`), counts the hand-worked official cases the
benchmark rules pass (:mod:`.rules`), and writes ``docs/parity.md``. App layer: rewards are reached by
registered name only.
"""
