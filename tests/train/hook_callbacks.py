"""User callbacks for test_hooks.py, importable as `tests.train.hook_callbacks:Class` (train.callbacks)."""
CALLS: list[tuple] = []


class Recorder:
    def on_step(self, step, logs):
        CALLS.append(("step", step, sorted(logs)))

    def on_eval(self, step, metrics):
        CALLS.append(("eval", step, sorted(metrics)))

    def on_save(self, step, path):
        CALLS.append(("save", step, path.is_dir()))


class StopAtTwo:
    def on_step(self, step, logs):
        return step == 2
