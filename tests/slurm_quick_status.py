"""`snakemake` for tests/test_cluster.py, with the SLURM plugin checking job states at a steady interval.

The plugin (snakemake-executor-plugin-slurm 2.8.0) waits 10 s longer after every status check in which no job
finished (up to 180 s) and goes back to `slurm-init-seconds-before-status-checks` when one does; Snakemake's
`seconds-between-status-checks` is used only until the first check. On a production cluster that spares the
scheduler; in the tests, where most jobs take 10-20 s and training a minute or two, it left snakemake noticing a
finished, cancelled or failed job up to a minute late, one job after another. Here every wait is Snakemake's
`seconds-between-status-checks` (the test profile: 1 s). Nothing else differs: jobs are submitted, watched
(squeue) and reported by the plugin's own code; the jobs themselves (`--executor slurm-jobstep` inside the
allocation) run the ordinary `python -m snakemake`.

Usage: python tests/slurm_quick_status.py <snakemake arguments>
"""
import snakemake_executor_plugin_slurm as plugin
from snakemake.cli import main

_check_active_jobs = plugin.Executor.check_active_jobs


async def _steady_check_active_jobs(self, active_jobs):
    async for job in _check_active_jobs(self, active_jobs):
        yield job
    self.next_seconds_between_status_checks = self.workflow.remote_execution_settings.seconds_between_status_checks


plugin.Executor.check_active_jobs = _steady_check_active_jobs

if __name__ == "__main__":
    main()
