"""Tansu ListOffsets(latest) vs produced batches: does the high watermark count every record of the last batch?"""
import asyncio, sys
sys.path.insert(0, "/tmp/faustspike")
from aiokafka import AIOKafkaProducer, AIOKafkaConsumer, TopicPartition
from common import create_topics
from tracehouse.embedded import TansuBroker
b = TansuBroker().start(); bs = b.bootstrap
async def main():
    await create_topics(bs, ["h"], 4)
    p = AIOKafkaProducer(bootstrap_servers=bs, linger_ms=50); await p.start()
    c = AIOKafkaConsumer(bootstrap_servers=bs); await c.start()
    for part, n in [(0, 1), (1, 5), (2, 20), (3, 5)]:
        futs = [await p.send("h", b"v%d" % i, partition=part) for i in range(n)]
        mds = await asyncio.gather(*futs)
        end = (await c.end_offsets([TopicPartition("h", part)]))[TopicPartition("h", part)]
        print(f"partition {part}: one batch of {n}: offsets {mds[0].offset}..{mds[-1].offset}, end_offsets={end} (expected {mds[-1].offset+1})")
    # second batch of 3 on partition 3
    futs = [await p.send("h", b"w", partition=3) for i in range(3)]; mds = await asyncio.gather(*futs)
    end = (await c.end_offsets([TopicPartition("h", 3)]))[TopicPartition("h", 3)]
    print(f"partition 3: + batch of 3: offsets {mds[0].offset}..{mds[-1].offset}, end_offsets={end} (expected {mds[-1].offset+1})")
    # can a consumer read past the reported end?
    tp = TopicPartition("h", 2); c.assign([tp]); c.seek(tp, 0)
    got = await c.getmany(tp, timeout_ms=1000); print("partition 2 readable records:", len(got.get(tp, [])))
    await p.stop(); await c.stop()
asyncio.run(main()); b.stop()
