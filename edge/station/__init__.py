"""The screening station: built in one step (``builder``), run by one loop (``station``).

See :mod:`facediag.edge.daemon` for the map of the modules. Import the pieces from
their modules (``facediag.edge.station.builder`` etc.); this package file stays empty
so that importing one piece does not import them all.
"""
