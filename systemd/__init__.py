"""The station's systemd units, example config and sysusers.d / tmpfiles.d files, shipped in the wheel as
package data (this folder installs as ``facediag.station_files``); ``facediag station install`` lays them out."""
