#!/bin/bash
echo configure
