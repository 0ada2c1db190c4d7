"""The ``luxc`` command: compile, inspect, run and profile training steps; predict with the
trained model; list passes; demo.

Every failure ends with one line on stderr and a non-zero exit code (set ``LUXC_DEBUG=1`` for
the traceback). One module per command; ``_common`` holds the group and what they share.
"""

from luxc.cli._common import CliError as CliError
from luxc.cli._common import main as main
from luxc.cli.compile_cmd import compile as _compile
from luxc.cli.inspect_cmd import inspect as _inspect
from luxc.cli.launch_cmd import launch as _launch
from luxc.cli.misc_cmd import demo as _demo
from luxc.cli.misc_cmd import list_passes as _list_passes
from luxc.cli.predict_cmd import predict as _predict
from luxc.cli.profile_cmd import profile as _profile
from luxc.cli.run_cmd import run as _run

for _command in (_compile, _inspect, _run, _predict, _profile, _list_passes, _demo, _launch):
    main.add_command(_command)
