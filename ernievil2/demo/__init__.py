"""The FashionScenes-CN demo: its data set and its report. Outside the library core: nothing in
``ernievil2`` imports it; ``tools/make_demo_data.py`` and ``tools/demo_report.py`` do."""
