"""Model shapes and (in later modules) the Flax models themselves."""
