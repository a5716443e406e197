"""kiwiPy's YAML encoding instead of CBOR. Needs PyYAML (pip install pyyaml)."""

import functools

import trio
import yaml

import kiwitrio

YAML = {
    # kiwiPy's defaults (kiwipy/rmq/defaults.py)
    "encoder": functools.partial(yaml.dump, encoding="utf-8"),
    "decoder": functools.partial(yaml.load, Loader=yaml.FullLoader),
    "content_type": "application/x-yaml",
}


async def main():
    async with kiwitrio.open_communicator("memory://yaml", **YAML) as comm:
        await comm.add_task_subscriber(lambda comm, task: task)
        with trio.fail_after(5):
            print(await (await comm.task_send((1, "tuple stays a tuple in YAML"))))


trio.run(main)
