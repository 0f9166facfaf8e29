from xmatch.entry import run

run()
