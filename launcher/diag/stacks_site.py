# sitecustomize chaining to the user's own: take the hook's directory off
# sys.path, then import the sitecustomize that python would have imported
# without it, if there is one.
def _mpspawn_chain():
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    me = sys.modules.pop("sitecustomize")
    try:
        import sitecustomize  # noqa: F401 - the user's
    except ImportError as e:
        sys.modules["sitecustomize"] = me  # the import system expects one
        if e.name != "sitecustomize":
            raise


_mpspawn_chain()
