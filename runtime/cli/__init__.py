"""The ``meltok-rt`` command line (``main``) and the pieces all three command lines share (``shared``):
click only, every command a few lines over the library."""
