"""Commands that drive the engine: ``densekd doctor`` (:mod:`.doctor`)."""
