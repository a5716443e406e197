"""The default CBOR codec, and a communicator with an encoder of your own."""

import datetime
import json

import trio

import kiwitrio

value = {
    "when": datetime.datetime(2026, 11, 25, 12, 30),  # naive: comes back naive
    "pair": (1, 2),                                    # tuples come back as lists
    (1, 2): "tuple key",                               # ...except as dict keys
    "big": 2**100,
    "tags": frozenset({"a"}),                          # frozensets come back as sets
}
print(kiwitrio.cbor_decode(kiwitrio.cbor_encode(value)))

try:
    kiwitrio.cbor_encode(object())
except TypeError as exc:
    print("TypeError:", exc)


async def main():
    # A text encoder is fine: str output is sent as UTF-8. Every communicator that talks
    # to this one needs the same encoder, decoder and content type.
    options = {"encoder": json.dumps, "decoder": json.loads,
               "content_type": "application/json"}
    async with kiwitrio.open_communicator("memory://json", **options) as comm:
        await comm.add_task_subscriber(lambda comm, task: {"got": task})
        with trio.fail_after(5):
            print(await (await comm.task_send([1, "a", None])))  # {'got': [1, 'a', None]}


trio.run(main)
