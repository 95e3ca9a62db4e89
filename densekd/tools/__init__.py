"""The commands that drive the engine (above it; the engine never imports them): ``densekd doctor``
(:mod:`.doctor`), ``densekd compare`` (:mod:`.compare`), ``densekd bench`` (:mod:`.bench`)."""
