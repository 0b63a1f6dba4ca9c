"""Peak bytes held by tensors during a block of PyTorch code: what trainer.memory's estimates are checked against."""

import weakref


class TensorBytes:
    """Peak bytes held by tensor storages during a block of PyTorch code (an allocator-level view on the CPU).

    with TensorBytes(model.parameters()) as m: ...; m.peak. Every tensor an operator returns is counted from its
    creation until its storage is freed; tensors alive before (the weights) are counted from the start.
    """

    def __init__(self, existing=()):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.weak import WeakIdKeyDictionary

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                from torch.utils._pytree import tree_flatten

                for t in tree_flatten(out)[0]:
                    tracker.add(t)
                return out

        self._mode, self._seen = Mode(), WeakIdKeyDictionary()
        self.now = self.peak = 0
        for t in existing:
            self.add(t)

    def add(self, t):
        import torch

        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        try:
            storage = t.untyped_storage()
        except (NotImplementedError, RuntimeError):  # a tensor subclass: its inner tensors come through as well
            return
        if storage in self._seen:
            return
        size = storage.nbytes()
        self._seen[storage] = size
        self.now += size
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._free, size)

    def _free(self, size):
        self.now -= size

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)
