"""Parses a `shardwire plan --svg` picture with xml.etree (fails on malformed XML) and
prints one line per heat-map cell: "cell <row> <col> <bytes>", then one per link bar:
"link <bytes>"."""
import sys
import xml.etree.ElementTree as ET

SVG = "{http://www.w3.org/2000/svg}"
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == SVG + "svg", root.tag
for rect in root.iter(SVG + "rect"):
    cls = rect.get("class")
    if cls == "cell":
        print("cell", rect.get("data-row"), rect.get("data-col"), rect.get("data-bytes"))
    elif cls == "link":
        print("link", rect.get("data-bytes"))
