"""A pipeline whose calls are recorded on the way through: the real pipeline still runs."""


class RecordingPipeline:
    def __init__(self, pipe):
        object.__setattr__(self, "_pipe", pipe)
        object.__setattr__(self, "calls", [])

    def __call__(self, **kwargs):
        self.calls.append(dict(kwargs, scheduler=self._pipe.scheduler))
        return self._pipe(**kwargs)

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __setattr__(self, name, value):
        setattr(self._pipe, name, value)
