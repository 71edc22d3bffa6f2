"""Run the app2 faust app inside an existing asyncio loop (no faust.Worker, no signal handlers)."""
import asyncio, sys, time, json
sys.path.insert(0, "/tmp/faustspike")
from common import create_topics, envelopes, produce, workload
from app2 import SpikeConfig, create_app
from tracehouse.embedded import TansuBroker

async def main():
    b = TansuBroker().start()
    await create_topics(b.bootstrap, ["ip.traces", "ip.roll"], 8)
    await produce(b.bootstrap, "ip.traces", envelopes(workload(20000), 8, 100))
    app = create_app(SpikeConfig(bootstrap=b.bootstrap, app_id="ip", traces_topic="ip.traces", rollups_topic="ip.roll",
                                 mode="dict_rollup", expect=20000, result_path="/tmp/faustspike/results/ip.json"))
    app.finalize()
    t0 = time.perf_counter()
    await app.start()
    while app.spike_stats["traces"] < 20000:
        await asyncio.sleep(0.1)
    print("in-process processed", app.spike_stats["traces"], "in", round(time.perf_counter() - t0, 1), "s incl. join")
    await app.stop()
    print("stopped cleanly; tasks left:", len([t for t in asyncio.all_tasks() if not t.done()]) - 1)
    b.stop()

asyncio.run(main())
