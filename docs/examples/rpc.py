"""RPC: calls to one named, live subscriber."""

import trio

import kiwitrio

URL = "memory://rpc"


def status(comm, msg):  # a plain function: runs in a worker thread
    if msg == "kill":
        raise PermissionError("not allowed")
    return {"state": "running", "asked": msg}


async def main():
    async with (
        kiwitrio.open_communicator(URL) as server,
        kiwitrio.open_communicator(URL) as client,
    ):
        await server.add_rpc_subscriber(status, "process-42")
        with trio.fail_after(5):
            print(await (await client.rpc_send("process-42", "status?")))
            try:
                await (await client.rpc_send("process-42", "kill"))
            except kiwitrio.RemoteException as exc:
                print(exc.remote_type, exc.remote_message)  # PermissionError not allowed

        try:
            await client.rpc_send("nobody", "hello?")  # raised at once
        except kiwitrio.UnroutableError:
            print("nobody subscribes to 'nobody'")

        try:
            await client.add_rpc_subscriber(status, "process-42")  # another communicator
        except kiwitrio.DuplicateSubscriberIdentifier:
            print("'process-42' is taken")


trio.run(main)
