"""Analysis of a localization table (``python -m dstorm3d.analyze``): drift correction in x, y, z
(:mod:`.drift`, COMET), merging of repeated localizations (:mod:`.merging`), filters (:mod:`.filters`),
a Gaussian render with z colour (:mod:`.render`), the FRC resolution (:mod:`.frc`) and exports for
ThunderSTORM, Picasso and SMAP (:mod:`.exports`); :mod:`.command` checks the settings and runs the steps.
Tables are read by :func:`dstorm3d.evaluation.score.read_table` (:mod:`.localizations`)."""
