"""Which files are audio: the one list of audio suffixes that every folder scan uses (token datasets,
training corpora). Kept apart from ``audio`` so that a scan imports neither soundfile nor soxr."""

# Formats libsndfile reads (``soundfile.available_formats()``), by their usual suffixes, lower case.
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au",
                            ".caf", ".w64", ".rf64", ".wv"})
