"""The console filter drops Ray's unactionable worker lines and keeps everything else."""

from aipray.pipeline.console import quiet_lines


def test_quiet_lines_drops_ray_data_noise_and_keeps_real_errors():
    lines = [
        "aipray.models.train: bpr epoch 1 loss 0.73 val HR@10 0.36",
        "[2026-11-22 06:58:34,123 E 31656 31726] core_worker.cc:2465: Actor with class name: "
        "'MapWorker(MapBatches(TrialActor))' and ID: '28' has constructor arguments in the "
        "object store and max_restarts > 0. If the arguments ...",
        "Progress bars disabled. To enable, set `ray.data.DataContext.get_current()...`",
        "Unhandled error (suppress with 'RAY_IGNORE_UNHANDLED_ERRORS=1'): "
        "ray::_StatsActor.update_execution_metrics() (pid=32608, ip=192.0.2.2)",
        'File ".../ray/data/_internal/stats.py", line 512, in update_execution_metrics',
        "    self._metrics[dataset_tag]",
        "KeyError: 'dataset_0351s5guGoQSht6uELdxlt_0'",
        "Traceback (most recent call last):",
        "ValueError: perceptual.origin: the extractor puts no warm item in class 6",
    ]
    assert quiet_lines(lines) == [lines[0], lines[-2], lines[-1]]
    assert quiet_lines([]) == []


def test_installed_filter_silences_workers_noise_on_a_real_ray(capfd):
    import sys
    import time

    import ray

    from aipray.pipeline import console

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=True, configure_logging=False)
    try:
        assert console.install() and console.install()  # idempotent

        @ray.remote
        def chatty():
            print("Progress bars disabled. To enable, set it", file=sys.stderr, flush=True)
            print("a line the user wants", file=sys.stderr, flush=True)

        ray.get(chatty.remote())
        seen = ""
        for _ in range(50):  # worker logs reach the driver asynchronously
            time.sleep(0.2)
            seen += capfd.readouterr().err
            if "a line the user wants" in seen:
                break
        assert "a line the user wants" in seen
        assert "Progress bars disabled" not in seen
    finally:
        ray.shutdown()
