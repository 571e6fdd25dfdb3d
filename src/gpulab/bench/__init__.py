"""The main job: the suite runner, the study's figures and the speedup table."""
