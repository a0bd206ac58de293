"""The one error base of dstorm3d: everything a user can fix (a file, a setting, a recording) raises a
:class:`UserInputError` (or a subclass), whose message is one line naming the problem and the fix. Every
command turns it into ``error: <message>`` and exit code 2 (:func:`dstorm3d.utils.cli.run_or_exit`).
No dependencies: the optics, the simulation and the commands all raise it."""

from __future__ import annotations


class UserInputError(ValueError):
    """A problem with what the user asked for (file, setting, recording); its message names the fix."""
